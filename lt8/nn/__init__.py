"""bitsandbytes-compatible ``lt8.nn`` (torch)."""

from lt8.torch.nn import Int8Params, Linear8bitLt, replace_linear

__all__ = ["Int8Params", "Linear8bitLt", "replace_linear"]
