"""EK-FAC influence functions through ``kronfluence``: the field's standard baseline.

:class:`EKFACAttributor` scores every training sample for a bad ``(prompt, response)`` by the
influence-function estimate of how up-weighting the sample changes the bad response's loss,
with the Gauss-Newton Hessian approximated by eigenvalue-corrected Kronecker factors (EK-FAC)
of every linear layer inside the transformer blocks (the unembedding is left out: its factors
grow with the vocabulary). Positive score = the sample *supports* the bad response (training
on it lowers the response's loss). It works on the model and texts, not on a Site's features.

Losses: training samples are ``(prompt, response)`` pairs with the summed NLL of the response
tokens (``loss="nll"``; for the Fisher, tokens are sampled from the model, the true Fisher) or
``(prompt, chosen, rejected)`` triples with the DPO loss against a frozen reference model
(``loss="dpo"``; empirical Fisher, as DPO has no sampled-label form). The query measurement is
always the summed NLL of the bad response.

Sources: Grosse et al., "Studying Large Language Model Generalization with Influence
Functions" (arXiv:2308.03296), EK-FAC from George et al. (arXiv:1806.03884); the library is
kronfluence (https://github.com/pomonam/kronfluence). Optional: ``pip install
'mechunlearn[influence]'`` then ``pip install --no-deps kronfluence==1.0.1`` (kronfluence
requires torchvision, which would replace a CPU build of torch; it never imports it).
"""

from __future__ import annotations

import copy
import importlib.util
import tempfile
import time
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mechunlearn.attribution.base import Attribution, Attributor, check_k
from mechunlearn.attribution.similarity import ranked_attribution
from mechunlearn.errors import ConfigError, EmptyDataError
from mechunlearn.tokens import TokenBatch, check_fits_context, model_tokenizer, tokenize

Loss = Literal["nll", "dpo"]
INSTALL = ("pip install 'mechunlearn[influence]' && pip install --no-deps kronfluence==1.0.1 "
           "(--no-deps: kronfluence's torchvision requirement would replace a CPU torch)")


def kronfluence_available() -> bool:
    """Whether ``kronfluence`` and the two packages it needs here (``einconv``,
    ``opt_einsum``) are installed (EK-FAC is registered in ``METHODS`` only then)."""
    return all(importlib.util.find_spec(m) is not None
               for m in ("kronfluence", "einconv", "opt_einsum"))


def _require() -> None:
    if not kronfluence_available():
        raise ConfigError(f"EK-FAC influence needs the optional package kronfluence: {INSTALL}.")
    try:
        import kronfluence  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"kronfluence is installed but does not import ({e}); reinstall: "
                          f"{INSTALL}.") from e


def _hf_copy(model: Any, probe: Tensor) -> tuple[nn.Module, list[str]]:
    """A deep copy of the wrapped Hugging Face model with GPT-2 ``Conv1D`` layers turned into
    ``nn.Linear`` (kronfluence tracks only Linear/Conv2d), and the names of the linear layers
    that run in a forward pass, minus the unembedding."""
    from transformers.pytorch_utils import Conv1D

    src = getattr(model, "original_model", model)
    # TransformerLens caches non-leaf tensors on its wrappers after a backward pass (e.g. the
    # attention pattern), which deepcopy refuses: copy those as detached tensors
    memo = {id(v): v.detach().clone() for m in src.modules() for v in vars(m).values()
            if isinstance(v, Tensor) and v.grad_fn is not None}
    hf = copy.deepcopy(src, memo).float().eval()
    for name, mod in list(hf.named_modules()):
        if isinstance(mod, Conv1D):
            lin = nn.Linear(mod.weight.shape[0], mod.weight.shape[1])
            lin.weight.data.copy_(mod.weight.data.T)
            lin.bias.data.copy_(mod.bias.data)
            parent_name, _, attr = name.rpartition(".")
            setattr(hf.get_submodule(parent_name) if parent_name else hf, attr, lin)
    fired: list[str] = []
    handles = [m.register_forward_hook(lambda _m, _i, _o, n=n: fired.append(n))
               for n, m in hf.named_modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            logits = hf(probe).logits
    finally:
        for h in handles:
            h.remove()
    vocab = logits.shape[-1]
    names = [n for n in dict.fromkeys(fired) if hf.get_submodule(n).out_features != vocab]
    if not names:
        raise ConfigError("EK-FAC: the model runs no linear layer besides the unembedding; "
                          "nothing for kronfluence to track.")
    return hf, names


def _resp_logp(hf: nn.Module, ids: Tensor, mask: Tensor, resp: Tensor,
               sample: bool = False) -> Tensor:
    """Summed log-prob of the response tokens per row ``[b]`` (sampled targets if asked)."""
    logits = hf(ids, attention_mask=mask).logits[:, :-1].float()
    target = ids[:, 1:]
    if sample:
        with torch.no_grad():
            target = torch.distributions.Categorical(logits=logits.detach()).sample()
    lp = torch.log_softmax(logits, -1).gather(-1, target[..., None]).squeeze(-1)
    return (lp * (resp & mask.bool())[:, 1:].float()).sum(1)


class _Items(torch.utils.data.Dataset):
    def __init__(self, tensors: dict[str, Tensor]) -> None:
        self.t = tensors

    def __len__(self) -> int:
        return len(next(iter(self.t.values())))

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.t.items()}


class EKFACAttributor(Attributor):
    """EK-FAC influence of training samples on bad responses (kronfluence; see module doc).

    Args:
        model: TransformerBridge (or Hugging Face causal LM) with a tokenizer; copied, never
            modified.
        train: ``N`` ``(prompt, response)`` pairs (``loss="nll"``) or ``(prompt, chosen,
            rejected)`` triples (``loss="dpo"``), formatted as the model saw them.
        loss: training loss, ``"nll"`` or ``"dpo"``.
        ref_model: the frozen reference model of the DPO loss (required for ``"dpo"``).
        beta: DPO temperature.
        k: selected-set size (top-k by score, uniform weights).
        ids: training ids (default ``"0".."N-1"``).
        damping: kronfluence's damping factor (``None``: 0.1 x mean eigenvalue, its default).
        batch_size: samples per batch for factors and gradients.

    Fitting the factors costs a few passes over the training set (about 100 s for 2,000 pairs
    and a 1M-parameter GPT-2 on one CPU thread); ``attribute_many`` scores all queries in one
    pairwise pass. Raises :class:`ConfigError` when kronfluence is not installed (with the
    install command), for malformed items or a missing ``ref_model``;
    :class:`EmptyDataError` for no training samples.
    """

    method = "ekfac"

    def __init__(self, model: Any, train: Sequence[Any], loss: Loss = "nll",
                 ref_model: Any = None, beta: float = 0.1, k: int = 32,
                 ids: Sequence[str] | None = None, damping: float | None = None,
                 batch_size: int = 16) -> None:
        _require()
        if loss not in ("nll", "dpo"):
            raise ConfigError(f"EKFACAttributor loss must be 'nll' or 'dpo', got {loss!r}.")
        if loss == "dpo" and ref_model is None:
            raise ConfigError("EKFACAttributor(loss='dpo') needs ref_model= (the DPO loss is "
                              "relative to the reference model).")
        want = 2 if loss == "nll" else 3
        train = list(train)
        if not train:
            raise EmptyDataError("EKFACAttributor got no training samples.")
        for i, t in enumerate(train):
            if not (isinstance(t, (tuple, list)) and len(t) == want
                    and all(isinstance(s, str) for s in t)):
                raise ConfigError(f"Training item {i} is {t!r}; loss={loss!r} needs tuples of "
                                  f"{want} str.")
        self.n, self.k, self.loss, self.beta = len(train), k, loss, float(beta)
        check_k(k, self.n)
        self.ids = tuple(str(i) for i in (ids if ids is not None else range(self.n)))
        if len(self.ids) != self.n:
            raise ConfigError(f"Got {len(self.ids)} ids for {self.n} training samples.")
        self.site, self.batch_size, self._model = None, batch_size, model
        self._tok = model_tokenizer(model)
        if self._tok is None:
            raise ConfigError("EKFACAttributor needs a model with a tokenizer.")
        self._train = self._dataset(train, ref_model)
        self._hf, self._modules = _hf_copy(model, self._batch([train[0][:2]]).input_ids)
        self._tmp = tempfile.TemporaryDirectory(prefix="mechunlearn-ekfac-")
        self._fit(damping)

    def _batch(self, pairs: Sequence[tuple[str, str]]) -> TokenBatch:
        tb = tokenize(self._tok, list(pairs))
        check_fits_context(self._model, tb)
        return tb

    def _dataset(self, items: Sequence[Any], ref_model: Any) -> _Items:
        if self.loss == "nll":
            tb = self._batch([(p, r) for p, r in items])
            return _Items({"ids": tb.input_ids, "mask": tb.attention_mask,
                           "resp": tb.response_mask})
        b = len(items)
        tb = self._batch([(p, c) for p, c, _ in items] + [(p, r) for p, _, r in items])
        ref = getattr(ref_model, "original_model", ref_model)
        with torch.no_grad():
            lp = torch.cat([_resp_logp(ref, tb.input_ids[s:s + 64], tb.attention_mask[s:s + 64],
                                       tb.response_mask[s:s + 64])
                            for s in range(0, 2 * b, 64)])
        pair = lambda t: torch.stack([t[:b], t[b:]], 1)  # noqa: E731  [b, 2, L]
        return _Items({"ids": pair(tb.input_ids), "mask": pair(tb.attention_mask),
                       "resp": pair(tb.response_mask), "ref_margin": lp[:b] - lp[b:]})

    def _task(self) -> Any:
        from kronfluence.task import Task

        outer = self

        def flat(batch: dict[str, Tensor], key: str) -> Tensor:
            # DPO: [b, 2, L] -> rows chosen_1, rejected_1, chosen_2, ... (kronfluence treats
            # every row as a sample; a pair's score is the sum of its two rows' scores, exact
            # because influence is linear in the training gradient)
            t = batch[key]
            return t.reshape(-1, t.shape[-1]) if t.ndim == 3 else t

        class _T(Task):
            def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False
                                   ) -> Tensor:
                ids, mask, resp = flat(batch, "ids"), flat(batch, "mask"), flat(batch, "resp")
                if outer.loss == "nll":
                    return -_resp_logp(model, ids, mask, resp, sample=sample).sum()
                lp = _resp_logp(model, ids, mask, resp).view(-1, 2)
                margin = (lp[:, 0] - lp[:, 1]) - batch["ref_margin"]
                return -F.logsigmoid(outer.beta * margin).sum()

            def compute_measurement(self, batch: Any, model: nn.Module) -> Tensor:
                return -_resp_logp(model, batch["ids"], batch["mask"], batch["resp"]).sum()

            def get_influence_tracked_modules(self) -> list[str]:
                return list(outer._modules)

            def get_attention_mask(self, batch: Any) -> Tensor:
                return flat(batch, "mask")

        return _T()

    def _fit(self, damping: float | None) -> None:
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments

        self._task_obj = self._task()
        self._hf = prepare_model(self._hf, self._task_obj)
        self._analyzer = Analyzer("mechunlearn", self._hf, self._task_obj, cpu=True,
                                  disable_tqdm=True, output_dir=self._tmp.name)
        self._damping = damping
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="kronfluence")
            self._analyzer.fit_all_factors(
                "ekfac", self._train, per_device_batch_size=self.batch_size,
                factor_args=FactorArguments(strategy="ekfac",
                                            use_empirical_fisher=self.loss == "dpo"),
                overwrite_output_dir=True)

    def scores(self, queries: Sequence[tuple[str, str]]) -> Tensor:
        """Influence of every training sample on each bad ``(prompt, response)``:
        ``[m, N]`` float64, higher = supports the bad response more."""
        from kronfluence.arguments import ScoreArguments

        pairs = [tuple(q) for q in queries]
        if not pairs or not all(len(q) == 2 and all(isinstance(s, str) for s in q)
                                for q in pairs):
            raise ConfigError("EKFACAttributor queries must be a non-empty list of "
                              "(prompt, bad_response) pairs of str.")
        tb = self._batch(pairs)
        qd = _Items({"ids": tb.input_ids, "mask": tb.attention_mask, "resp": tb.response_mask})
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="kronfluence")
            self._analyzer.compute_pairwise_scores(
                "scores", "ekfac", query_dataset=qd, train_dataset=self._train,
                per_device_query_batch_size=min(len(pairs), 16),
                per_device_train_batch_size=self.batch_size,
                score_args=ScoreArguments(damping_factor=self._damping),
                overwrite_output_dir=True)
        S = self._analyzer.load_pairwise_scores("scores")["all_modules"].double()
        return S.view(len(pairs), self.n, 2).sum(-1) if self.loss == "dpo" else S

    def attribute(self, query: Any) -> Attribution:
        """Attribute one bad ``(prompt, response)`` pair."""
        return self.attribute_many([query])[0]

    def attribute_many(self, queries: Any) -> list[Attribution]:
        """Attribute each bad ``(prompt, response)`` pair (one pairwise kronfluence pass)."""
        t0 = time.perf_counter()
        S = self.scores(queries)
        dt = (time.perf_counter() - t0) / len(S)
        out = []
        for s in S:
            a = ranked_attribution(s, self.k, self.ids, self.method, None, t0,
                                   {"loss": self.loss})
            out.append(Attribution(a.indices, a.ids, a.weights, a.residual, a.scores,
                                   a.method, None, dt, a.info))
        return out
