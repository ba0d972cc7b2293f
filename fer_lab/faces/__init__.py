"""Faces (02_filter_faces): the dlib face detector, cached parallel detection, and the noise filter."""
