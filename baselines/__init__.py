"""Learners for llm_coop_envs: MAGRPO, independent-reward GRPO, policies, the embedded default model."""
