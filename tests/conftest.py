from tests.drpserver import drp, drp_factory  # noqa: F401  (fixtures)
