"""Data: dataset readers and label rules (`odir`), keywords, patient-level splits, preprocessing,
caching and the training dataset. Import the sub-modules for everything else; only the readers'
entry points are re-exported here."""

from eyefuse.data.odir import Dataset, Patient, load_dataset

__all__ = ["Dataset", "Patient", "load_dataset"]
