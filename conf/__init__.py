"""vrl's Hydra configs, installed as the package ``vrl_conf`` so they travel with a non-editable install."""
