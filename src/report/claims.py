"""The seeds' own claims (../shared/seeds/), each set against the runs that test it.

Every sentence with a number is computed here from the summaries, so it cannot go stale; a
claim whose runs are missing says so instead of guessing.
"""

from src.report.plots import layer_norms
from src.report.stats import arm_metric, paired_difference

SEED_NOTEBOOK = "../shared/seeds/000_3b9da6ec5cb55cad.txt"
CHAPTER_NOTES = "../shared/seeds/001_ca5e02447b9c98c2.txt"


def section(summaries: dict[str, dict]) -> list[str]:
    paragraphs = [text for text in (bn_deficit(summaries.get("seed_notebook")),
                                    glorot_for_saturating(summaries.get("init_activation")),
                                    relu_against_vanishing(summaries.get("activations")),
                                    transfer_helps(summaries.get("mobilenet_v2_cifar10")),
                                    mixed_float16_cost(summaries.get("mobilenet_v2_cifar10"))) if text]
    return ["## The seeds' claims, tested", "", *[line for text in paragraphs for line in (text, "")]]


def mean(summary: dict, arm: str, metric: str) -> float | None:
    stats = arm_metric(summary["arms"].get(arm, []), metric)
    return stats.mean if stats else None


def bn_deficit(summary: dict | None) -> str | None:
    """The seed notebook's model2 (He + BN + clipping) scores below model1 after one epoch: why?"""
    if not summary or not all(arm in summary["arms"] for arm in ("model1", "model2", "model2_fast_bn")):
        return None
    plain, bn, fast = (mean(summary, arm, "test_accuracy") for arm in ("model1", "model2", "model2_fast_bn"))
    gain = paired_difference(summary["arms"]["model2"], summary["arms"]["model2_fast_bn"], "test_accuracy")
    verdict = ("BN's moving statistics explain the deficit: after 211 steps at Keras's momentum 0.99 they "
               "still hold 12% of their initial values, and at 0.9 model2 catches up with model1"
               if fast >= plain else
               "BN's lagging moving statistics explain part of the deficit, not all of it" if fast > bn else
               "BN's moving statistics do not explain the deficit")
    paired = (f" (paired by seed: {gain[0].mean * 100:+.2f} ± {gain[0].std * 100:.2f} pts, p = {gain[2]:.3g})"
              if gain else "")
    return (f"**model2 (He + BN + clipping) scores below model1 after one epoch** ({SEED_NOTEBOOK}). Ours, test "
            f"accuracy over {len(summary['arms']['model1'])} seeds: model1 {plain:.4f}, "
            f"model2 {bn:.4f}, model2 with BN momentum 0.9 {fast:.4f}{paired}. Verdict: {verdict}.")


def glorot_for_saturating(summary: dict | None) -> str | None:
    """The chapter notes: Keras's default glorot_uniform is "good for sigmoid/tanh"."""
    if not summary:
        return None
    findings, glorot_best = [], []
    for activation in ("sigmoid", "tanh"):
        scores = {init: mean(summary, f"{activation}, {init}", "val_accuracy")
                  for init in ("glorot_uniform", "he_normal", "lecun_normal")}
        scores = {init: score for init, score in scores.items() if score is not None}
        if "glorot_uniform" not in scores:
            return None
        best = max(scores, key=scores.get)
        shown = ", ".join(f"{init} {score:.4f}" for init, score in scores.items())
        trains = max(scores.values()) >= 0.15  # chance is 0.10
        glorot_best.append(trains and best == "glorot_uniform")
        findings.append(f"{activation} trains best with Glorot ({shown})" if glorot_best[-1] else
                        f"{activation} trains better with {best} than with Glorot ({shown})" if trains else
                        f"{activation} does not train with any of them at this depth ({shown})")
    verdict = ("supported: Glorot is the best of the three for both" if all(glorot_best) else
               "not supported at this depth")
    return (f"**\"glorot_uniform (Keras's default) is good for sigmoid/tanh\"** ({CHAPTER_NOTES}). On the 50-layer "
            "network of init_activation (1 epoch, validation accuracy): " + "; ".join(findings) +
            f". Verdict: {verdict}.")


def relu_against_vanishing(summary: dict | None) -> str | None:
    """The chapter notes' answer to vanishing gradients: "use ReLU" (with He initialisation)."""
    if not summary or "relu" not in summary["arms"]:
        return None
    scores = {arm: mean(summary, arm, "val_accuracy") for arm in summary["arms"]}
    ranking = sorted((arm for arm, score in scores.items() if score is not None), key=scores.get, reverse=True)
    found = layer_norms(summary["arms"]["relu"], "initial")
    ratio = (f"; at initialisation its first hidden layer's gradient norm is {found[1][0] / found[1][-2]:.2g} times "
             "the last hidden layer's" if found and len(found[1]) > 2 else "")
    trains = scores["relu"] >= 0.15  # chance is 0.10
    better = ranking[:ranking.index("relu")]
    verdict = ("not supported: ReLU does not train at this depth" if not trains else
               "supported: ReLU with He initialisation trains the 50-layer network" +
               (f", though {len(better)} of the family train it better ({', '.join(better)})" if better else
                ", and better than the rest of the family"))
    shown = ", ".join(f"{arm} {scores[arm]:.4f}" for arm in ranking)
    return (f"**\"Use ReLU\" against vanishing gradients** ({CHAPTER_NOTES}). The 50-layer network of activations "
            f"(SGD, 3 epochs, validation accuracy, mean over seeds): {shown}{ratio}. Verdict: {verdict}.")


def transfer_helps(summary: dict | None) -> str | None:
    """The seed's summary: "transfer learning speeds up training and improves performance".

    Two baselines from random weights: the same network and phases with its base frozen (scratch,
    scratch_fine_tuned), and the fair one, the network trained whole with BN in training mode for
    the longest pretrained arm's epochs (scratch_whole against symmetric_fine_tuned)."""
    if not summary:
        return None
    pairs = [(pretrained, scratch) for pretrained, scratch in (("symmetric", "scratch"),
                                                               ("symmetric_fine_tuned", "scratch_fine_tuned"),
                                                               ("symmetric_fine_tuned", "scratch_whole"))
             if pretrained in summary["arms"] and scratch in summary["arms"]]
    if not pairs:
        return None
    accuracy = {arm: mean(summary, arm, "test_accuracy") for pair in pairs for arm in pair}
    shown = "; ".join(f"{pretrained} {accuracy[pretrained]:.4f} against {scratch} {accuracy[scratch]:.4f}"
                      for pretrained, scratch in pairs)
    fair = [pair for pair in pairs if pair[1] == "scratch_whole"] or pairs
    better = all(accuracy[pretrained] > accuracy[scratch] for pretrained, scratch in fair)
    verdict = "supported at this budget" if better else "not supported here"
    frozen_at_chance = [scratch for _, scratch in pairs if scratch != "scratch_whole" and accuracy[scratch] <= 0.11]
    if frozen_at_chance:  # 10 classes
        fair_baseline = ("the network trained whole from random weights, BN in training mode, is the fair baseline"
                         if "scratch_whole" in accuracy else "a from-scratch network trained whole, BN in training "
                         "mode, is the fair baseline and is not run yet")
        verdict += (f" ({', '.join(frozen_at_chance)}: a frozen base from random weights, its BN layers in inference "
                    f"mode with their initial statistics, passes on almost no signal, so the head stays at chance; "
                    f"{fair_baseline})")
    return (f"**\"Transfer learning improves performance\"** ({SEED_NOTEBOOK}, its summary). MobileNetV2 on 2,500 "
            f"CIFAR-10 images, test accuracy, the pretrained base against the same network and budget from "
            f"random weights: {shown}. Verdict: {verdict}.")


def mixed_float16_cost(summary: dict | None) -> str | None:
    """The seed sets mixed_float16: what it costs on a CPU."""
    if not summary or not all(arm in summary["arms"] for arm in ("seed", "seed_mixed_float16")):
        return None
    runs = {arm: summary["arms"][arm] for arm in ("seed", "seed_mixed_float16")}
    seconds = {arm: sum(run["duration_s"] for run in arm_runs) / len(arm_runs) for arm, arm_runs in runs.items()}
    accuracy = {arm: mean(summary, arm, "test_accuracy") for arm in runs}
    ratio = seconds["seed_mixed_float16"] / seconds["seed"]
    verdict = (f"on a CPU the policy costs x{ratio:.2f} the time: float16 pays on GPUs with tensor cores, and "
               "CPUs have no fast float16 kernels" if ratio > 1.1 else f"no cost on this CPU (x{ratio:.2f})")
    return (f"**The seed's mixed_float16 policy** ({SEED_NOTEBOOK}). A run of the seed's setup, mean over seeds: "
            f"{seconds['seed_mixed_float16']:.0f} s under mixed_float16 against {seconds['seed']:.0f} s in float32, "
            f"test accuracy {accuracy['seed_mixed_float16']:.4f} against {accuracy['seed']:.4f}. Verdict: {verdict}.")
