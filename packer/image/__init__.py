"""One image's bytes to pixels: what the header says, the decode, the resize, the patches.

- `reject`: why an image is left out (`REJECT_REASONS`, `RejectedImage`, `Reject`);
- `formats`: which Pillow formats a file opens as (by signature, or by its name);
- `imageio`: header size (EXIF orientation applied) and decode at a planned size;
- `resize`: the array resize and orientation (OpenCV);
- `patchify`: an image array to patches and back;
- `notes`: Pillow's warnings and log messages while reading an image, as per-image notes;
- `stderr_notes`: what C libraries print to stderr meanwhile, as notes of that image.

Everything here is numpy in, numpy out; the index (header scan) and the fill (decode)
both use it.
"""
