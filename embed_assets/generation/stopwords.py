"""English function words shared by the model-free question generators.

Only general function words: words that are common *in a domain* are down-weighted by
their document frequency instead, so this list does not need to know the domain.
"""

ENGLISH_STOPWORDS: frozenset[str] = frozenset(
    """
    a about above after again against all also am an and any
    are as at be because been before being below between both but
    by can cannot could did do does doing down during each either
    else few for from further had has have having here how however
    if in into is it its itself just may might more most
    must no nor not now of off on once only or other
    our out over own same should so some such than that the
    their them then there these they this those through to too under
    until up upon very via vs was we were what when where
    which while who whom why will with within without would you your
    new versus among per based using use used
    """.split()
)
