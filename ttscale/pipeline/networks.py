"""The study's networks: their shapes as the config gives them, their
checkpoints, and loading them trained (mixed into `Context`, whose config,
tokenizer, paths and mesh they read)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

from etils import epath

from ttscale import layout
from ttscale.models import LanguageModel, ModelConfig, Network, ValueModel
from ttscale.pipeline import fingerprints
from ttscale.training.checkpoints import Checkpointer
from ttscale.training.restore import restore_language_model, restore_parameters


class Networks:
  """The policy, the larger policy, the verifiers and the revision model of
  a `Context`."""

  def policy_config(self, large: bool = False) -> ModelConfig:
    """The policy's network; `large=True`: the larger policy of the comparison."""
    block = self.config.large_model if large else self.config.model
    return ModelConfig.from_config(block, self.tokenizer.vocab_size)

  def init_checkpoint(self, model: str = "policy") -> dict | None:
    """{"format", "path", "trim_vocab"} of the released checkpoint `model`
    ("policy", "large" or "prm": the `checkpoint.*` field) starts from, or
    None: the policies are trained from scratch, the PRM from the policy."""
    block = self.config.checkpoint
    path = block.get(model, "")
    if not path:
      return None
    return {"format": block.format, "path": path, "trim_vocab": block.trim_vocab}

  def policy_checkpointer(self, large: bool = False) -> Checkpointer:
    return Checkpointer(self.path(layout.LARGE if large else layout.POLICY),
                        fingerprints.policy_spec(self, large),
                        max_to_keep=self.config.train.max_checkpoints)

  def load_policy(self, large: bool = False) -> Network:
    """The trained policy (or the larger one) from its last checkpoint."""
    stage, directory = ("train_large", layout.LARGE) if large else ("train_policy",
                                                                     layout.POLICY)
    if not epath.Path(self.path(directory)).is_dir():
      raise ValueError(f"{self.path(directory)} is missing: run the "
                       f"'{stage}' stage first")
    checkpointer = self.policy_checkpointer(large)
    step = checkpointer.latest_step()
    if step is None or step < self.config.train.num_steps:
      raise ValueError(f"{checkpointer.directory}: no finished policy "
                       f"checkpoint; run the '{stage}' stage first")
    restored_step, network = restore_language_model(
        checkpointer, self.policy_config(large), self.config.train, self.mesh, self.log)
    checkpointer.close()
    if restored_step != step:
      # The finished step was damaged: the stage must train again from the
      # last good step (or from scratch), so it is no longer done.
      epath.Path(self.path(layout.marker(stage))).unlink(missing_ok=True)
      raise ValueError(f"{checkpointer.directory}: the final step {step} does not restore; "
                       f"run the '{stage}' stage again (it resumes from "
                       f"{'scratch' if restored_step is None else f'step {restored_step}'})")
    return network

  def verifier_train_config(self, kind: str = "prm"):
    """How a verifier of `kind` trains: `verifier_train`, or for the revision
    verifier (long rows: previous attempts in context) `revision_verifier_train`."""
    if kind == "revision_verifier":
      return self.config.revision_verifier_train
    return self.config.verifier_train

  def verifier_trunk_is_large(self, kind: str = "prm") -> bool:
    """Whether a verifier of `kind` starts from the larger policy
    (`verifier_train.trunk="large"`; the PRM and ORM only: the revision
    verifier starts from the revision model)."""
    return kind in ("prm", "orm") and self.config.verifier_train.trunk == "large"

  def verifier_config(self, kind: str = "prm") -> ModelConfig:
    """A verifier's network: its trunk's shape (the policy's, or the larger
    policy's), its own dropout."""
    return dataclasses.replace(
        self.policy_config(large=self.verifier_trunk_is_large(kind)),
        dropout_rate=self.verifier_train_config(kind).dropout_rate)

  def verifier_module(self, kind: str = "prm") -> Callable[..., ValueModel]:
    """`(config, rngs=...) -> ValueModel` of `kind`: with the trunk's step
    likelihood as input (`step_likelihood` of its training block) or not."""
    reads_likelihood = self.verifier_train_config(kind).get("step_likelihood", False)
    ends = (self.tokenizer.step_id, self.tokenizer.eos_id) if reads_likelihood else ()
    return functools.partial(ValueModel, step_likelihood=ends)

  def checkpointers(self, kind: str) -> tuple[Checkpointer, Checkpointer]:
    """(training state, best parameters) checkpointers of an early-stopped
    model of `kind` ("prm", "orm", "revision", "revision_verifier")."""
    spec = fingerprints.model_spec(self, kind)
    block = (self.config.revision_train if kind == "revision"
             else self.verifier_train_config(kind))
    return (Checkpointer(self.path(layout.checkpoints(kind, "state")), spec,
                         max_to_keep=block.max_checkpoints),
            Checkpointer(self.path(layout.checkpoints(kind, "best")), spec, max_to_keep=1))

  def load_verifier(self, kind: str, stage_done: bool = True) -> Network:
    """The best validated verifier of `kind` ("prm", "orm", "revision_verifier").

    `stage_done=False` skips the check that its training stage finished (for
    that stage itself, after training).
    """
    return self._load_best(kind, self.verifier_config(kind), self.verifier_module(kind),
                           stage_done)

  def _load_best(self, kind: str, model_config: ModelConfig, module,
                 stage_done: bool = True) -> Network:
    """The parameters in `<kind>/best`, kept there by early stopping."""
    stage = f"train_{kind}"
    if stage_done and not epath.Path(self.path(layout.marker(stage))).exists():
      raise ValueError(f"no trained {kind} in {self.workdir}: run the "
                       f"'{stage}' stage first")
    best = Checkpointer(self.path(layout.checkpoints(kind, "best")),
                        fingerprints.model_spec(self, kind), max_to_keep=1)
    step = best.latest_step()
    if step is None:
      raise ValueError(f"{best.directory}: no checkpoint; the workdir is damaged")
    network = restore_parameters(best, step, module, model_config, self.mesh)
    best.close()
    return network

  def load_revision_model(self) -> Network:
    """The revision model with the lowest validation loss."""
    return self._load_best("revision", self.policy_config(), LanguageModel)
