"""Fine-grained span rewards: per-group span reward models, dense per-segment rewards, PPO (Fine-Grained RLHF)."""
