"""bitsandbytes-compatible ``lt8.autograd`` (torch): see :mod:`lt8.torch.autograd`."""

from lt8.torch.autograd import *  # noqa: F401,F403
from lt8.torch.autograd import __all__  # noqa: F401
