from tests.drpserver import drp, drp_factory, module_drp, module_drp_factory  # noqa: F401  (fixtures)
from tests.storeutil import store  # noqa: F401  (fixture)
from tests.hafakes import logs, segment  # noqa: F401  (fixtures)
