"""navit-pack's packer: NaViT Patch n' Pack as pure numpy functions, and one Ray pipeline.

The data path, one package per stage, each importing only the stages before it:

    packer.sources  where image bytes come from (folders, WebDataset, Parquet)
    packer.image    one image: header, decode, resize, patches
    packer.index    one row per image, from headers only
    packer.plan     every batch of an epoch, from the index alone
    packer.fill     a batch plan filled with pixels
    packer.pipeline the fill on Ray: the only module that imports Ray

Beside them: `packer.config` (the packing config), `packer.contract` (what crosses a
process boundary), and the data makers `packer.sample_data` and `packer.synthetic`.
"""
