"""Keypoint sets of the datasets ViTPose+ is trained on: counts, left/right flip order, skeletons.

The order of ``VITPOSE_PLUS_DATASETS`` is the head order of the official ViTPose+ checkpoints
(``keypoint_head`` is COCO, ``associate_keypoint_heads.0..4`` the rest) and the expert order of
their MoE FFNs.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeypointSet:
    name: str
    num_keypoints: int
    flip_indices: tuple[int, ...] | None  # None: no mirror symmetry known, flip test is skipped
    skeleton: tuple[tuple[int, int], ...] = ()
    sigmas: tuple[float, ...] | None = None  # OKS per-keypoint sigmas, where a COCO-style metric exists
    upper_body_ids: tuple[int, ...] | None = None  # the half-body augmentation's upper body (None: off)


def _swap(n: int, pairs) -> tuple[int, ...]:
    order = list(range(n))
    for a, b in pairs:
        order[a], order[b] = b, a
    return tuple(order)


COCO_FLIP_INDICES = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
COCO_SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
                 (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
COCO_SIGMAS = (.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062, .107, .107, .087,
               .087, .089, .089)

# AI Challenger: r/l shoulder, elbow, wrist (0-5), r/l hip, knee, ankle (6-11), head top, neck.
AIC_FLIP_INDICES = _swap(14, [(0, 3), (1, 4), (2, 5), (6, 9), (7, 10), (8, 11)])
AIC_SKELETON = ((2, 1), (1, 0), (0, 13), (13, 3), (3, 4), (4, 5), (8, 7), (7, 6), (6, 9), (9, 10),
                (10, 11), (12, 13), (0, 6), (3, 9))
# MPII: r ankle..r hip (0-2), l hip..l ankle (3-5), pelvis, thorax, neck, head, r wrist..r shoulder
# (10-12), l shoulder..l wrist (13-15).
MPII_FLIP_INDICES = _swap(16, [(0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)])
MPII_SKELETON = ((0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9), (8, 12),
                 (12, 11), (11, 10), (8, 13), (13, 14), (14, 15))
# AP-10K / APT-36K animals: eyes, nose, neck, tail root, then front and back legs left/right.
ANIMAL_FLIP_INDICES = _swap(17, [(0, 1), (5, 8), (6, 9), (7, 10), (11, 14), (12, 15), (13, 16)])
ANIMAL_SKELETON = ((0, 1), (0, 2), (1, 2), (2, 3), (3, 4), (3, 5), (5, 6), (6, 7), (3, 8), (8, 9),
                   (9, 10), (4, 11), (11, 12), (12, 13), (4, 14), (14, 15), (15, 16))


def _wholebody_flip() -> tuple[int, ...]:
    """COCO-WholeBody: 17 body, 6 feet, 68 face (iBUG order), 21 left hand, 21 right hand."""
    order = list(COCO_FLIP_INDICES)
    order += [20, 21, 22, 17, 18, 19]  # left big toe, small toe, heel <-> right
    face = list(range(68))
    pairs = [(i, 16 - i) for i in range(8)]                      # jaw
    pairs += [(17 + i, 26 - i) for i in range(5)]                # eyebrows
    pairs += [(31, 35), (32, 34)]                                # nostrils
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips
    pairs += [(60, 64), (61, 63), (65, 67)]                      # inner lips
    for a, b in pairs:
        face[a], face[b] = b, a
    order += [23 + f for f in face]
    order += [112 + i for i in range(21)] + [91 + i for i in range(21)]
    return tuple(order)


DATASETS: dict[str, KeypointSet] = {}


def register_dataset(name: str, num_keypoints: int, flip_indices=None, skeleton=(), sigmas=None,
                     upper_body_ids=None) -> KeypointSet:
    """Add a keypoint set (custom heads); returns it. flip_indices: a permutation or None."""
    if flip_indices is not None:
        flip_indices = tuple(int(i) for i in flip_indices)
        if sorted(flip_indices) != list(range(num_keypoints)):
            raise ValueError(f"flip_indices of {name!r} must be a permutation of range({num_keypoints}), "
                             f"got {list(flip_indices)}")
    if sigmas is not None and len(sigmas) != num_keypoints:
        raise ValueError(f"sigmas of {name!r} must have {num_keypoints} entries, got {len(sigmas)}")
    if upper_body_ids is not None and not all(0 <= int(i) < num_keypoints for i in upper_body_ids):
        raise ValueError(f"upper_body_ids of {name!r} must be in [0, {num_keypoints}), got {list(upper_body_ids)}")
    DATASETS[name] = KeypointSet(name, int(num_keypoints), flip_indices, tuple(skeleton),
                                 tuple(float(s) for s in sigmas) if sigmas is not None else None,
                                 tuple(int(i) for i in upper_body_ids) if upper_body_ids is not None else None)
    return DATASETS[name]


register_dataset("coco", 17, COCO_FLIP_INDICES, COCO_SKELETON, COCO_SIGMAS, upper_body_ids=range(11))
# Sigmas and upper-body ids (keypoint_info types) from mmpose 0.x configs/_base_/datasets/*_info.py.
register_dataset("aic", 14, AIC_FLIP_INDICES, AIC_SKELETON,
                 (.01388152, .01515228, .01057665, .01417709, .01497891, .01402144, .03909642, .03686941,
                  .01981803, .03843971, .03412318, .02415081, .01291456, .01236173), upper_body_ids=(0, 1, 2, 3, 4, 5, 12, 13))
register_dataset("mpii", 16, MPII_FLIP_INDICES, MPII_SKELETON,
                 (.089, .083, .107, .107, .083, .089, .026, .026, .026, .026, .062, .072, .179, .179, .072, .062),
                 upper_body_ids=range(7, 16))
_ANIMAL_SIGMAS = (.025, .025, .026, .035, .035, .079, .072, .062, .079, .072, .062, .107, .087, .089, .107, .087, .089)
register_dataset("ap10k", 17, ANIMAL_FLIP_INDICES, ANIMAL_SKELETON, _ANIMAL_SIGMAS, upper_body_ids=(0, 1, 2, 3, 5, 6, 7, 8, 9))
register_dataset("apt36k", 17, ANIMAL_FLIP_INDICES, ANIMAL_SKELETON, _ANIMAL_SIGMAS, upper_body_ids=(0, 1, 2, 3, 5, 6, 7, 8, 9))
register_dataset("wholebody", 133, _wholebody_flip(), COCO_SKELETON)
# PoseTrack18 (TAR-ViTPose): nose, head_bottom, head_top, ears (never annotated), COCO's body; the
# COCO mirror order and sigmas, PoseTrack18's skeleton (vitpose/data/posetrack.py).
POSETRACK_SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
                      (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
register_dataset("posetrack", 17, COCO_FLIP_INDICES, POSETRACK_SKELETON, COCO_SIGMAS, upper_body_ids=range(11))

VITPOSE_PLUS_DATASETS = ("coco", "aic", "mpii", "ap10k", "apt36k", "wholebody")


def keypoint_set(name_or_count) -> KeypointSet:
    """A registered set by name; for a bare keypoint count, COCO when it is 17, else an anonymous set."""
    if isinstance(name_or_count, str):
        if name_or_count not in DATASETS:
            raise ValueError(f"unknown dataset {name_or_count!r}; known: {sorted(DATASETS)} "
                             "(vitpose.register_dataset adds one)")
        return DATASETS[name_or_count]
    k = int(name_or_count)
    if k == 17:
        return DATASETS["coco"]
    return KeypointSet(f"custom{k}", k, None)
