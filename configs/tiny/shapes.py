"""Tiny LLaVA-style model trained from scratch on the procedural shapes set (the default run).

    mmjax train --config configs/tiny/shapes.py --workdir /tmp/shapes [--config.train.steps=500]
"""

from mmjax.train.shapes_default import get_config  # noqa: F401  (one recipe, shipped in the package)
