"""Dataset layer: readers into the common record schema, image I/O and the torch dataset."""
