"""llm-coop-envs: PettingZoo parallel environments for teams of cooperating language models.

>>> from llm_coop_envs import make
>>> env = make("coop_writing-v0")
>>> observations, infos = env.reset(seed=0)
>>> sorted(observations)
['elaboration', 'summary']

Every environment of the suite is registered below, in one list. Ids are ``[namespace/]name-vN``;
bump the version whenever data, prompts, reward, termination or sandbox semantics change.
"""

from llm_coop_envs.core import CoopParallelEnv, Score, Task, TaskSet, Turn
from llm_coop_envs.registration import EnvSpec, RegistryError, make, pprint_registry, register, registry_ids, spec

__all__ = [
    "CoopParallelEnv",
    "EnvSpec",
    "RegistryError",
    "Score",
    "Task",
    "TaskSet",
    "Turn",
    "__version__",
    "make",
    "pprint_registry",
    "register",
    "registry_ids",
    "spec",
]
__version__ = "0.1.0"

register(
    id="coop_writing-v0",
    entry_point="llm_coop_envs.summarisation:SummarisationEnv",
    description="Two-paragraph summary of a forum post (paper: TLDR); agents summary + elaboration.",
)
register(
    id="coop_abstract_expansion-v0",
    entry_point="llm_coop_envs.abstract_expansion:AbstractExpansionEnv",
    description="Introduction from a paper abstract (paper: arXiv); agents background + method.",
)
register(
    id="coop_coding-v0",
    entry_point="llm_coop_envs.coding:CodingEnv",
    description="Helper writes aux, main writes the entry point (paper: HumanEval/CoopHumanEval); bundled problems.",
)
