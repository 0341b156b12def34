using Conveyor.Storage;

namespace Conveyor.Tests.Unit;

/// <summary>Remote text as PostgreSQL can store it (<see cref="StoredText"/>).</summary>
public sealed class StoredTextTests
{
    [Fact]
    public void Storable_text_drops_nul_replaces_unpaired_surrogates_and_never_cuts_a_pair()
    {
        // Built in code: a lone surrogate does not survive as test case data.
        var (high, low, emoji) = ('\uD800', '\uDC00', "\U0001F600");

        Assert.Equal("plain", StoredText.Storable("plain", 10));
        Assert.Equal("ab", StoredText.Storable("a\0b", 10));
        Assert.Equal("a\uFFFDb", StoredText.Storable($"a{high}b", 10));
        Assert.Equal("a\uFFFD", StoredText.Storable($"a{low}", 10));
        Assert.Equal("ab", StoredText.Storable("ab" + emoji, 3));
        Assert.Equal("ab" + emoji, StoredText.Storable("ab" + emoji, 4));
        Assert.Equal("a\uFFFD\U00010000", StoredText.Storable($"a{high}{high}{low}", 4));
    }
}
