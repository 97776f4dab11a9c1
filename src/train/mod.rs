//! Fine-tuning: optimizer, schedules, the training loop, checkpoints and metrics (work in progress).
