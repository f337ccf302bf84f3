from embedsearch.embeddings import get_registry
from embedsearch.pydantic import LanceModel, Vector

# Get a sentence-transformer function
func = get_registry().get("sentence-transformers").create()


class MySchema(LanceModel):
    # Embed the 'text' field automatically
    text: str = func.SourceField()
    # Store the embeddings in the 'vector' field
    vector: Vector(func.ndims()) = func.VectorField()


# Create a LanceDB table with the schema
import embedsearch

db = embedsearch.connect("grpc://127.0.0.1:50050")
table = db.create_table("mytable", schema=MySchema)
# Insert data - embeddings are generated automatically
table.add([{"text": "This is a test."}, {"text": "Another example."}])

# Query the table - embeddings are generated for the query
results = table.search("test example").limit(5).to_pandas()
print(results)
