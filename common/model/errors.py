"""Errors of the model package, importable without torch or open_clip (the CLI catches them
on every command, so ``fedsearch deploy``/``device`` steps start in well under a second)."""


class EncoderError(RuntimeError):
    """The encoder could not be built or an input could not be encoded."""
