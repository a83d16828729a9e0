"""eyefuse: binocular multi-label fundus photograph classification (ODIR-5K and paired data)."""

from eyefuse.errors import EyefuseError

__version__ = "0.1.0"

#: The eight ODIR-5K patient-level labels, in the order of the annotation and the official CSV.
ODIR_LABELS: tuple[str, ...] = ("N", "D", "G", "C", "A", "H", "M", "O")

#: Human-readable names for the ODIR labels (reports, the web page).
ODIR_LABEL_NAMES: dict[str, str] = {
    "N": "Normal",
    "D": "Diabetes (diabetic retinopathy)",
    "G": "Glaucoma",
    "C": "Cataract",
    "A": "Age-related macular degeneration",
    "H": "Hypertension (hypertensive retinopathy)",
    "M": "Pathological myopia",
    "O": "Other diseases/abnormalities",
}

__all__ = ["ODIR_LABELS", "ODIR_LABEL_NAMES", "EyefuseError", "__version__"]
