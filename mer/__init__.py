"""mer: music emotion recognition for piano music (Zhao & Yoshii), as a distributed batch annotation system."""
__version__ = "0.1.0"
