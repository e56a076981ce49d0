"""Folder names the engine writes under a run folder (kept free of heavy imports: the CLI reads them)."""

MANIFEST_DIR = "manifest"
IMAGES_DIR = "images"
MASKS_DIR = "masks"
