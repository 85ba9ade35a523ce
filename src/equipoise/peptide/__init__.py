"""equipoise.peptide: de novo peptide sequencing from MS/MS spectra. See docs/peptide.md."""
