"""equipoise.ensemble: protein backbone ensembles: validation, baselines, a generative model. See docs/ensemble.md."""
