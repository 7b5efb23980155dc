"""An algorithm package written against llm-coop-envs' public plug-in interface only."""
