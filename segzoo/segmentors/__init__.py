"""Segmentors: a backbone, an optional neck and decode heads composed into one model."""

from segzoo.segmentors.encoder_decoder import EncoderDecoder
from segzoo.segmentors.upernet import upernet

__all__ = ["EncoderDecoder", "upernet"]
