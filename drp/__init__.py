__version__ = "4.14.0"
