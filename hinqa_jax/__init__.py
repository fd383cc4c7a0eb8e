"""hinqa-jax: adapt small LLaMA models to low-resource domains (Hindi tourism QA) in JAX/Flax."""
