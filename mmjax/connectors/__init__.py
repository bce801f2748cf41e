"""Connectors: visual features -> tokens the decoder can use."""

from mmjax.connectors.projector import Projector, ProjectorConfig

__all__ = ["Projector", "ProjectorConfig"]
