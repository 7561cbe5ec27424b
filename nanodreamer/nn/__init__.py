"""Network building blocks: attention, the axial transformer, distributions."""
