import tensorflow as tf


def train():
    return tf.keras.Sequential()
