"""Image QC: embedders and judges by name, the QC bank, FAISS indexes and the filters over them."""
