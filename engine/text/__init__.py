"""Report text: corpora, sections, the entity model, the lexicon extractor and the vocabulary."""
