"""Typed errors of the quantization library; every message names the tensor or format and says expected vs found."""


class QuantError(ValueError):
    """Base class: a quantization request that cannot be honoured."""


class UnknownFormatError(QuantError):
    """A format or recipe name that is not in our tables."""


class QuantShapeError(QuantError):
    """A tensor whose shape or dtype does not fit the format's block layout."""
