"""Backbone families. Each module is one family and imports only ``visionzoo.layers``
and ``visionzoo.backbones.base``."""
