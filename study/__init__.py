"""The active-learning efficiency study (issue 8): ActPRM against random, entropy, BALD and full data on a pool
with gold labels. A research wing beside the product: `actprm study` runs it; see study/README.md."""
