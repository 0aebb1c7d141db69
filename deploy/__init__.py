"""The launch layer: how the parts are launched together.

The `navit` command line (`deploy.cli`), the one-machine pretrain supervisor
(`deploy.pretrain`), and beside them the images and compose files. Nothing below this
layer imports it.
"""
