"""The kinds of problematic image a judge can flag: one vocabulary for the rules judge, the MLLM
judge's answer format, the QC bank's statistics and the degradation generator of the tests."""

IMAGE_PROBLEMS = ("lateral", "inverted", "overexposed", "underexposed", "cropped", "rotated",
                  "blank", "noise", "text")
# what an MLLM may also answer, which no image statistic detects
MLLM_ONLY_PROBLEMS = ("other_view", "artefact", "unusable")
