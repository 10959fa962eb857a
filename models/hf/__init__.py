"""Self-contained Hugging Face modeling code shipped inside exported PRM folders (imports only torch/transformers)."""
