"""The landmarks the face-analysis network predicts, in its output order."""

from __future__ import annotations

#: The landmarks the network predicts, in output order (pupils first: alignment uses them).
FACE_LANDMARKS: tuple[str, ...] = (
    "pupil_left",
    "pupil_right",
    "eye_left_inner",
    "eye_left_outer",
    "eye_right_inner",
    "eye_right_outer",
    "nose_bridge",
    "nose_tip",
    "mouth_left",
    "mouth_right",
)
