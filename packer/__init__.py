"""navit-pack's packer: NaViT Patch n' Pack as pure numpy functions, and one Ray pipeline.

Everything here except `packer.pipeline` is numpy in, numpy out, and imports no Ray.
"""
