"""People: find faces in a frame, align them to a template, describe each one.

detect.py (MTCNN: boxes, scores, 5 landmarks) → align.py (5-point similarity transform to
the ArcFace 112×112 template) → embed.py (MobileFaceNet: an L2-normalized 192-d vector a face).
The recognizer over a people gallery is `recognize.faces.FaceRecognizer`.
"""

from pathlib import Path

MODELS = Path(__file__).resolve().parent.parent / "data" / "models"  # package data: the bundled face models
