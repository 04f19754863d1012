"""The MLX worker process: owns MLX, all model memory and the engine thread."""
