"""Models: the image classifier, its checkpoints and preprocessing; diffusion/segmentation builders."""
