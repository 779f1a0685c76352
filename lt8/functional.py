"""bitsandbytes-compatible ``lt8.functional`` (torch): see :mod:`lt8.torch.functional`."""

from lt8.torch.functional import *  # noqa: F401,F403
from lt8.torch.functional import __all__  # noqa: F401
