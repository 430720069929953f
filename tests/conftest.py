import jax

# Accuracy is checked in float64; float32 tests pass float32 arrays explicitly.
jax.config.update("jax_enable_x64", True)
