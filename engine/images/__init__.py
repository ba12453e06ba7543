"""Image drawing: the backend registry, output columns, PNG helpers and the images command's run."""
