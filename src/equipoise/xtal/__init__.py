"""equipoise.xtal: atomic model refinement against X-ray data (R-work/R-free, geometry, maps). See docs/xtal.md."""
