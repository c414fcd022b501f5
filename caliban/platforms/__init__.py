"""Where jobs run: one package per platform behind :class:`caliban.platforms.base.Platform`."""
