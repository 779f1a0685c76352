"""bitsandbytes-compatible ``lt8.nn.modules``."""

from lt8.torch.nn import Int8Params, Linear8bitLt

__all__ = ["Int8Params", "Linear8bitLt"]
