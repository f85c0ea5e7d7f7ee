"""The subject data: its pictures, their captions, the class pictures, and the order a training draws them in."""
